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
    && useradd --system --uid 1000 --no-create-home --shell /usr/sbin/nologin jkp

USER 1000
# Listen beyond loopback inside the container; everything else comes from JKP_* or --config.
ENV JKP_SERVER_IP=0.0.0.0 \
    JKP_SERVER_PORT=8080 \
    JUPYTER_CONFIG_DIR=/tmp/jupyter-config
EXPOSE 8080
ENTRYPOINT ["jkpmanager"]
