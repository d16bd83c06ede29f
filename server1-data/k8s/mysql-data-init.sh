# Runs once, when the data directory is empty (sourced by the mysql image's entrypoint from
# /docker-entrypoint-initdb.d), and again against the running server whenever this script changes
# (Job mysql-data-setup in mysql-data.yaml: an install made before a user or grant was added gets it
# too). So every statement must be idempotent: CREATE ... IF NOT EXISTS, GRANT, REVOKE, limits;
# never a password change (rotate.yml of the readmit_secrets role does those).
# Passwords come from the pod's environment (Secret mysql-data).
# mysql_native_password: PyMySQL and mysqlclient authenticate without TLS or RSA keys.
#
# history_reader is the API's patient-history lookup (node 3): SELECT on CleanData's clean_encounters,
# nothing else. MySQL grants on a table that does not exist yet (readmit_data creates it on its first
# run) only together with CREATE, so CREATE is revoked right after: SELECT stays, and applies once the
# table exists. At most 32 connections: 4 API pods (the autoscaler's maximum) + 1 during a rolling
# update, a pool of 4 each, with room to spare; the serving tier cannot take the data node's connections.
docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS rawdata CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS cleandata CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS airflow CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'readmit'@'%' IDENTIFIED WITH mysql_native_password BY '${READMIT_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON rawdata.* TO 'readmit'@'%';
GRANT ALL PRIVILEGES ON cleandata.* TO 'readmit'@'%';
CREATE USER IF NOT EXISTS 'airflow'@'%' IDENTIFIED WITH mysql_native_password BY '${AIRFLOW_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON airflow.* TO 'airflow'@'%';
CREATE USER IF NOT EXISTS 'history_reader'@'%' IDENTIFIED WITH mysql_native_password BY '${HISTORY_DB_PASSWORD}';
ALTER USER 'history_reader'@'%' WITH MAX_USER_CONNECTIONS 32;
GRANT SELECT, CREATE ON cleandata.clean_encounters TO 'history_reader'@'%';
REVOKE CREATE ON cleandata.clean_encounters FROM 'history_reader'@'%';
FLUSH PRIVILEGES;
SQL
