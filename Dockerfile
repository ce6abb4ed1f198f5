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
RUN pip install --no-cache-dir .
RUN useradd --create-home rejoin
USER rejoin
EXPOSE 8000
CMD ["rejoin", "api"]
