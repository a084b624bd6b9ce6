FROM python:3.11-slim
# HAProxy: strangler serve's data plane in front of the facade
RUN apt-get update && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker broker
COPY legacy_bridge legacy_bridge
COPY new_domain new_domain
COPY skeleton_app skeleton_app
COPY examples examples
COPY migrations migrations
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["strangler"]
