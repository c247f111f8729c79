//! The `integration` test target: the real binary and the library against a
//! MariaDB/MySQL server (DATABASE_URL, default mysql://root@127.0.0.1:3306;
//! each test creates and drops its own `bp_test_*` database).

mod audit;
mod binary;
mod dashboard;
mod databases;
mod faults;
mod fleet;
mod galera;
mod http;
mod kinds;
mod library;
mod manifests;
mod mariadb;
mod proxy;
mod recurring;
mod replicas;
mod steering;
mod testdb;
