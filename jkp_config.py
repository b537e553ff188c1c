# An example configuration of jkp:  jkpmanager --config jkp_config.py
#
# Every option may also come from its JKP_* environment variable (named in `jkpmanager --help-all`);
# precedence: command line > this file > environment > built-in default. Options left commented out
# keep their environment value or default. `jkpmanager --generate-config` writes every option.

c = get_config()  # noqa: F821 (provided by traitlets when the file is loaded)

# -- jkp's own HTTP server ---------------------------------------------------------------------
# Listen on all interfaces in a container; the default is 127.0.0.1. (JKP_SERVER_IP)
# c.JKPManagerApp.ip = "0.0.0.0"
# c.JKPManagerApp.port = 8080  # (JKP_SERVER_PORT)

# -- Enterprise Gateway ------------------------------------------------------------------------
# http or https; websockets use ws or wss accordingly. (JKP_EG_ENDPOINT)
c.GatewayClient.url = "http://enterprise-gateway.enterprise-gateway:8888"
# c.GatewayClient.connect_timeout = 5  # (JKP_EG_CONNECT_TIMEOUT)
# c.GatewayClient.request_timeout = 60  # (JKP_EG_REQUEST_TIMEOUT)
# Above max_concurrent_starts: a start's request lasts until the kernel runs. (JKP_EG_MAX_REQUESTS)
# c.GatewayClient.max_requests = 200

# -- Redis -------------------------------------------------------------------------------------
# A URL overrides host/port/db; rediss:// for TLS, the password in the URL. (JKP_REDIS_URL)
# c.RedisStore.redis_url = "rediss://:password@redis:6380/0"
c.RedisStore.redis_host = "redis"  # (JKP_REDIS_HOST)
# c.RedisStore.redis_port = 6379  # (JKP_REDIS_PORT)
# c.RedisStore.redis_db = 0  # (JKP_REDIS_DB)
# The server's password (requirepass), when not in the URL. (JKP_REDIS_PASSWORD)
# c.RedisStore.redis_password = ""
# Redis Sentinel: the master they name, followed across failovers, instead of the URL or
# host/port. (JKP_REDIS_SENTINELS, JKP_REDIS_SENTINEL_MASTER, JKP_REDIS_SENTINEL_PASSWORD)
# c.RedisStore.redis_sentinels = ["redis-sentinel-0:26379", "redis-sentinel-1:26379"]
# c.RedisStore.redis_sentinel_master = "mymaster"
# c.RedisStore.redis_sentinel_password = ""
# The idle list; the pool's other keys are derived from it. Keep the original service's key to
# take over its pool as it is. (JKP_REDIS_KEY)
# c.RedisStore.key = "tablegpt-test:kernels:idle"

# -- The pool ----------------------------------------------------------------------------------
# Idle kernels kept ready, across all replicas sharing this Redis. (JKP_MAX_PENDING_KERNELS)
c.PoolManager.max_pending_kernels = 10
# The EG kernel spec, and what its Kubernetes pods get:
# c.PoolManager.kernel_name = "python_kubernetes"  # (JKP_KERNEL_NAME)
# c.PoolManager.kernel_image = "elyra/kernel-py:3.2.2"  # (JKP_KERNEL_IMAGE)
# c.PoolManager.kernel_namespace = "tablegpt-kernels"  # (JKP_KERNEL_NAMESPACE)
# EG refuses kernels for root (unauthorized_users) and names pods after this. (JKP_KERNEL_USER_NAME)
# c.PoolManager.kernel_user_name = "jovyan"
# The NFS share mounted into every kernel pod at working_dir; users' directories are made under
# working_dir. An empty server means no volume (a local EG, or a share baked into the image).
# c.PoolManager.nfs_volume_server = "10.0.0.29"  # (JKP_NFS_VOLUME_SERVER)
# c.PoolManager.nfs_mount_path = "/data/tablegpt-test/shared/"  # (JKP_NFS_MOUNT_PATH)
# c.PoolManager.working_dir = "/mnt/shared/"  # (JKP_WORKING_DIR)

# Seconds between keep-alive pings of idle kernels; keep it well below EG's
# cull_idle_timeout. (JKP_ACTIVATION_INTERVAL)
# c.PoolManager.activation_interval = 1200
# Periodic check that the pool is full and its kernels alive, seconds. (JKP_CHECK_TASK_INTERVAL)
# c.PoolManager.check_task_interval = 120
# How long a pop may take in all (an empty pool, set-ups) before answering 503, seconds.
# (JKP_POP_TIMEOUT)
# c.PoolManager.pop_timeout = 10
# Pools by kernel spec, each with PoolManager options by trait name plus "size"
# (docs/configuration.md: Pools).
# (JKP_POOLS, as JSON)
# c.JKPManagerApp.pools = {
#     "python_kubernetes": {"size": 10},
#     "python_pandas": {"size": 4, "init_code": "import pandas as pd, numpy as np"},
# }
# Python run in each new kernel before it is pooled; what it defines stays. (JKP_INIT_CODE)
# c.PoolManager.init_code = ""
# Idle kernels older than this are replaced, seconds; 0: never. (JKP_MAX_KERNEL_AGE)
# c.PoolManager.max_kernel_age = 0
# How long a pop's Idempotency-Key is remembered, seconds. (JKP_IDEMPOTENCY_TTL)
# c.PoolManager.idempotency_ttl = 600
# Heartbeats in Redis, seconds apart; a replica silent for 3 of them has its starts and
# claims taken over by another. (JKP_REPLICA_HEARTBEAT_INTERVAL)
# c.PoolManager.replica_heartbeat_interval = 2
# Kubernetes pods may take a while to pull their image and start. (JKP_KERNEL_READY_TIMEOUT)
# c.PoolManager.kernel_ready_timeout = 300
# Each request of a pop or an activation; a set-up that times out is judged by asking EG in
# its last quarter: a kernel EG still has is hung, shut down, and the next one taken.
# c.PoolManager.kernel_request_timeout = 2  # (JKP_KERNEL_REQUEST_TIMEOUT)
# c.PoolManager.max_concurrent_starts = 4  # (JKP_MAX_CONCURRENT_STARTS)
# c.PoolManager.max_start_backoff = 60  # (JKP_MAX_START_BACKOFF)
# How often a replica opens websockets to kernels other replicas pooled, and closes those to
# kernels handed out through them. (JKP_CHANNEL_SYNC_INTERVAL)
# c.PoolManager.channel_sync_interval = 5
# Replacements start this long after a burst's first pop, so the burst has EG to itself.
# c.PoolManager.refill_delay = 1  # (JKP_REFILL_DELAY)

# -- As a drop-in gateway (docs/gateway.md) ----------------------------------
# Point a Jupyter client's gateway URL at jkp: creates a pool can serve are served warm.
# Mirror EG's own settings here, so a warm create is refused whenever EG would refuse it.
# c.KernelService.unauthorized_users = ["root"]  # (JKP_UNAUTHORIZED_USERS, comma-separated)
# c.KernelService.authorized_users = []  # empty: everyone not refused (JKP_AUTHORIZED_USERS)
# c.KernelService.impersonation = False  # as EG_IMPERSONATION_ENABLED (JKP_IMPERSONATION_ENABLED)
# Kernels a user (a pop's userId, a create's KERNEL_USERNAME) may hold across replicas, as
# EG's max_kernels_per_user; pooled idle kernels never count. -1: no limit.
# c.KernelService.max_kernels_per_user = -1  # (JKP_MAX_KERNELS_PER_USER)
# Variables besides KERNEL_* a create may set in the kernel, as EG's client_envs.
# c.KernelService.client_envs = []  # (JKP_CLIENT_ENVS)
# A create that sets one of these to another value than its pool's is started cold by EG.
# c.KernelService.start_only_env = ["KERNEL_IMAGE", "KERNEL_NAMESPACE", ...]  # (JKP_START_ONLY_ENV)
# How long a create waits on an empty pool before EG starts it cold, seconds.
# c.KernelService.gateway_pool_wait = 0.5  # (JKP_GATEWAY_POOL_WAIT)
