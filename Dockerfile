# IoT telemetry gateway. Build: docker build -t iot-gateway .
# Run:   docker run -p 1883:1883 -p 9464:9464 -v $PWD/config:/config -v gw-data:/data iot-gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_DATA_DIR=/data \
    GATEWAY_INGRESS__HOST=0.0.0.0 \
    GATEWAY_ADMIN__HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY device_sim ./device_sim
RUN pip install . && useradd --system --uid 10001 --home-dir /data gateway \
    && mkdir -p /data /config && chown gateway /data
COPY config/gateway.yaml /config/gateway.yaml

USER gateway
VOLUME ["/data", "/config"]
# 1883: MQTT (embedded broker); 9464: /healthz /readyz /metrics
EXPOSE 1883 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz').status != 200)"
ENTRYPOINT ["gateway"]
CMD ["run", "--config", "/config/gateway.yaml"]
