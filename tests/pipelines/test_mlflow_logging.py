from pipelines.mlflow_logging import printable_uri


def test_a_printed_tracking_uri_never_shows_a_password():
    assert printable_uri("postgresql+psycopg2://sdft:s3cret@postgres:5432/mlflow") == (
        "postgresql+psycopg2://sdft:***@postgres:5432/mlflow"
    )
    assert printable_uri("https://:token@mlflow.example.com/") == "https://:***@mlflow.example.com/"
    for uri in ("sqlite:///mlflow.db", "http://127.0.0.1:5000", "http://user@host:5000"):
        assert printable_uri(uri) == uri
