# Runs once, when the data directory is empty (sourced by the mysql image's entrypoint from
# /docker-entrypoint-initdb.d). Passwords come from the pod's environment (Secret mysql-data).
# mysql_native_password: PyMySQL and mysqlclient authenticate without TLS or RSA keys.
docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS rawdata CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS cleandata CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS airflow CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'readmit'@'%' IDENTIFIED WITH mysql_native_password BY '${READMIT_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON rawdata.* TO 'readmit'@'%';
GRANT ALL PRIVILEGES ON cleandata.* TO 'readmit'@'%';
CREATE USER IF NOT EXISTS 'airflow'@'%' IDENTIFIED WITH mysql_native_password BY '${AIRFLOW_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON airflow.* TO 'airflow'@'%';
FLUSH PRIVILEGES;
SQL
