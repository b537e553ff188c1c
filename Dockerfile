# jkp: a pool of warm Jupyter kernels on Enterprise Gateway.
#   docker build -t jkp . && docker run -p 8080:8080 -e JKP_EG_ENDPOINT=http://eg:8888 -e JKP_REDIS_HOST=redis jkp
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/jkp
COPY pyproject.toml setup.py README.md ./
COPY jkp ./jkp
RUN pip install . \
    && groupadd --system --gid 1000 jkp \
    && useradd --system --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin jkp

USER 1000:1000
# Listen beyond loopback inside the container; everything else comes from JKP_* or --config.
ENV JKP_SERVER_IP=0.0.0.0 \
    JKP_SERVER_PORT=8080 \
    JUPYTER_CONFIG_DIR=/tmp/jupyter-config
EXPOSE 8080
# Liveness only (touches neither Redis nor EG); the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health' % os.environ.get('JKP_SERVER_PORT', '8080'), timeout=4)"]
# jkp stops within 10 s of SIGTERM: pops in flight finish, the pool stays in Redis.
STOPSIGNAL SIGTERM
ENTRYPOINT ["jkpmanager"]
