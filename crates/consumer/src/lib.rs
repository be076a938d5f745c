//! The consumer role: matches events against webhook policies and delivers them.
//!
//! Empty until the delivery issue lands; nothing here runs yet.
