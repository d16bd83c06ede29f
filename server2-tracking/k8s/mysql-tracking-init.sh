# Runs once, when the data directory is empty (sourced by the mysql image's entrypoint from
# /docker-entrypoint-initdb.d). The password comes from the pod's environment (Secret
# mysql-tracking). mysql_native_password: PyMySQL authenticates without TLS or RSA keys.
docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS mlflow CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'mlflow'@'%' IDENTIFIED WITH mysql_native_password BY '${MLFLOW_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON mlflow.* TO 'mlflow'@'%';
FLUSH PRIVILEGES;
SQL
