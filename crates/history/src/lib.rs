//! Execution, task and log records of deliveries in PostgreSQL.
//!
//! Empty until the history issue lands; nothing here runs yet.
