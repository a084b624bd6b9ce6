FROM python:3.11-slim
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
