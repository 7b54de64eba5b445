//! taskgate task-service (being written).
