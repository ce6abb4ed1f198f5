# One image for the API and the worker (docker-compose.yml picks the command).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY activities ./activities
COPY domain ./domain
COPY providers ./providers
COPY runtime ./runtime
COPY security ./security
COPY store ./store
COPY workflows ./workflows
COPY worker.py settings.py ./
# gcc, libc6-dev and libssl-dev build the optional compiled subscriber-list sealer
# (security/_bulkseal.c, ~4x less CPU a row); removed again once it is built (libssl3 stays).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && pip install --no-cache-dir . \
 && (cd / && python -c "import security._bulkseal") \
 && apt-get purge -y gcc libc6-dev libssl-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home rejoin
USER rejoin
EXPOSE 8000
CMD ["rejoin", "api"]
