-- The first start of the postgres service: MLflow's backend store beside Dagster's database.
CREATE DATABASE mlflow OWNER sdft;
