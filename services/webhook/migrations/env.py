import webhook.models  # noqa: F401  (registers the tables)
from itsm_shared.migrations import run_env
from sqlmodel import SQLModel

run_env(SQLModel.metadata)
