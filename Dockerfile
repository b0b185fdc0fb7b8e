# One image for every retl process; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY scheduler scheduler
COPY connectors connectors
COPY shared shared
COPY cli cli
RUN pip install --no-cache-dir .
ENV RETL_HOME=/var/lib/retl
USER nobody
EXPOSE 8000
CMD ["retl", "api", "--host", "0.0.0.0", "--port", "8000"]
