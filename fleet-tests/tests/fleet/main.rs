//! taskgate started as many replicas: migrations from many replicas at once, and the Kubernetes
//! manifests against the services' settings. (The fleet on a Redis Cluster is the `cluster` test.)

mod manifests;
mod migrations;
