//! taskgate gateway (being written).
