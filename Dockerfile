# The image of docker-compose.yml's worker and Dask services: cryptobt installed once, at build
# time, and run as a non-root user (files it writes are its own, never root-owned in a checkout).
FROM python:3.11-slim

# psql: the export's COPY path (the psycopg fallback works without it, slower).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 cryptobt && mkdir -p /data && chown cryptobt:cryptobt /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY flows ./flows
COPY sql ./sql
COPY data/sample ./data/sample
# Editable: the code finds sql/ and data/sample/ beside itself, as in a clone.
RUN pip install --no-cache-dir -e . && chown -R cryptobt:cryptobt /app

USER cryptobt
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    CRYPTOBT_LAKE_ROOT=/data/lake \
    CRYPTOBT_RESULTS_ROOT=/data/results \
    PREFECT_HOME=/home/cryptobt/.prefect
CMD ["cryptobt", "--help"]
