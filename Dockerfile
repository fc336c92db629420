FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contactsync ./contactsync
COPY api_gateway ./api_gateway
COPY worker ./worker
COPY tasks ./tasks
COPY cli ./cli
RUN pip install --no-cache-dir . && useradd --system --uid 10001 contactsync
USER contactsync
EXPOSE 8000 5555
CMD ["contactsync", "gateway", "--host", "0.0.0.0"]
