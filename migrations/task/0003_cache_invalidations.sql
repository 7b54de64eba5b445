-- Writes whose cache invalidation could not reach Redis (one row each). Any
-- replica that can reach Redis gives the cache a new epoch, which makes every
-- older cached list a miss, and then deletes the rows it covered. This bounds
-- how long another replica can serve a list that misses such a write.
CREATE TABLE cache_invalidations (
    id         bigserial   PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
