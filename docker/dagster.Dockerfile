# sdft Dagster image: webserver, daemon and the user code (the pipelines package), on the training image, so runs
# launched from the UI train on the container's GPUs with the same CUDA stack.
#   docker build -f docker/train.Dockerfile -t sdft-train . && docker build -f docker/dagster.Dockerfile -t sdft-dagster .
# Usually started by docker/docker-compose.yml (Postgres storage, MLflow server); alone, with local SQLite state:
#   docker run --rm --gpus all -p 127.0.0.1:3000:3000 -v sdft-state:/app/.sdft sdft-dagster
# The UI listens on the container's interfaces so that the port can be published: publish it on the host's loopback.
ARG TRAIN_IMAGE=sdft-train
FROM ${TRAIN_IMAGE}

COPY docker/workspace.yaml docker/dagster.yaml /app/docker/
COPY docker/entrypoint.sh /usr/local/bin/sdft-entrypoint
ENV DAGSTER_HOME=/app/.sdft/dagster \
    MLFLOW_TRACKING_URI=sqlite:////app/.sdft/mlflow.db
ENTRYPOINT ["sdft-entrypoint"]
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/docker/workspace.yaml"]
