//! taskgate auth-service (being written).
