# One image for the worker and the API (docker-compose.yml runs both).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 traitflow
WORKDIR /app

# what `pip install .` builds from: tests/integration/test_install.py builds the wheel
# from these same COPY lines and checks it ships, imports and runs every module
COPY pyproject.toml README.md ./
COPY attributes ./attributes
COPY streams ./streams
COPY api ./api
COPY traitflow ./traitflow
RUN pip install .
COPY examples ./examples

USER traitflow
ENV TRAITFLOW_RULES_PATH=/app/examples/rules.yaml \
    TRAITFLOW_HOME=/home/traitflow/.traitflow
EXPOSE 8080
CMD ["traitflow", "worker"]
