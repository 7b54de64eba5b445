//! taskgate started as many replicas: migrations from many replicas at once, the Kubernetes
//! manifests against the services' settings, and the Postgres pool every replica holds. (The fleet on a Redis Cluster is the `cluster` test.)

mod manifests;
mod migrations;
mod pool;
