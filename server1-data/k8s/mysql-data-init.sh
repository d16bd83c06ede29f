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
#
# predictions is the Predictions store: the API's prediction log (readmit_contract.prediction_log), which
# monitor_drift (user readmit, like RawData and CleanData) reads for drift of live traffic and prunes.
# prediction_writer is the API's identity there: INSERT into prediction_log, and CREATE so that the API makes
# the table on its first write (one CREATE TABLE IF NOT EXISTS with its indexes inline: no INDEX privilege);
# no SELECT, UPDATE or DELETE, nothing of rawdata or cleandata. Same connection bound as history_reader (the
# same pods).
#
# grafana_reader is Grafana's MySQL datasource (node 3, the "Model monitoring" dashboard): SELECT on
# CleanData's three monitoring tables only (performance on arrival, drift checks and their features), with
# the CREATE-then-REVOKE of history_reader for tables monitor_drift has not made yet. At most 8
# connections: the datasource's pool holds 4 (maxOpenConns), and a Grafana pod that died uncleanly may
# leave its 4 until MySQL times them out.
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
CREATE DATABASE IF NOT EXISTS predictions CHARACTER SET utf8mb4;
GRANT ALL PRIVILEGES ON predictions.* TO 'readmit'@'%';
CREATE USER IF NOT EXISTS 'prediction_writer'@'%' IDENTIFIED WITH mysql_native_password BY '${PREDICTIONS_DB_PASSWORD}';
ALTER USER 'prediction_writer'@'%' WITH MAX_USER_CONNECTIONS 32;
GRANT INSERT, CREATE ON predictions.prediction_log TO 'prediction_writer'@'%';
CREATE USER IF NOT EXISTS 'grafana_reader'@'%' IDENTIFIED WITH mysql_native_password BY '${GRAFANA_READER_DB_PASSWORD}';
ALTER USER 'grafana_reader'@'%' WITH MAX_USER_CONNECTIONS 8;
GRANT SELECT, CREATE ON cleandata.arrival_performance TO 'grafana_reader'@'%';
REVOKE CREATE ON cleandata.arrival_performance FROM 'grafana_reader'@'%';
GRANT SELECT, CREATE ON cleandata.drift_checks TO 'grafana_reader'@'%';
REVOKE CREATE ON cleandata.drift_checks FROM 'grafana_reader'@'%';
GRANT SELECT, CREATE ON cleandata.feature_drift TO 'grafana_reader'@'%';
REVOKE CREATE ON cleandata.feature_drift FROM 'grafana_reader'@'%';
FLUSH PRIVILEGES;
SQL
