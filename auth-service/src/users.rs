//! The `users` table: accounts and their password hashes.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::{Email, LoginName, Phone, Username},
    error::AuthError,
};

/// A row of `users`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    /// Primary key.
    pub id: Uuid,
    /// Username, if the user has one.
    pub username: Option<String>,
    /// Lowercased email, if any.
    pub email: Option<String>,
    /// E.164 phone, if any.
    pub phone: Option<String>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// May disable users.
    pub is_admin: bool,
    /// Set when an admin disabled the account.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

impl UserRow {
    /// The proto form (without the hash).
    pub fn to_proto(&self) -> taskgate_proto::auth::v1::User {
        taskgate_proto::auth::v1::User {
            id: self.id.to_string(),
            username: self.username.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            created_at: Some(prost_types::Timestamp {
                seconds: self.created_at.timestamp(),
                nanos: i32::try_from(self.created_at.timestamp_subsec_nanos()).unwrap_or(0),
            }),
        }
    }
}

/// The login names of a new account; at least one is set.
pub struct NewUser<'a> {
    /// Username.
    pub username: Option<&'a Username>,
    /// Email.
    pub email: Option<&'a Email>,
    /// Phone.
    pub phone: Option<&'a Phone>,
    /// PHC hash of the password.
    pub password_hash: &'a str,
    /// Whether the account is an admin.
    pub is_admin: bool,
}

/// Queries on `users`. Cheap to clone.
#[derive(Clone)]
pub struct Users {
    /// The service's pool (search_path = auth).
    pool: PgPool,
}

impl Users {
    /// Queries through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Users { pool }
    }

    /// Inserts a user; a taken login name is ALREADY_EXISTS naming it.
    #[tracing::instrument(name = "users insert", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "INSERT", db.collection.name = "users"))]
    pub async fn insert(&self, new: NewUser<'_>) -> Result<UserRow, AuthError> {
        let result = sqlx::query_as::<_, UserRow>(
            "INSERT INTO users (id, username, email, phone, password_hash, is_admin) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, username, email, phone, password_hash, is_admin, disabled_at, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(new.username.map(Username::as_str))
        .bind(new.email.map(Email::as_str))
        .bind(new.phone.map(Phone::as_str))
        .bind(new.password_hash)
        .bind(new.is_admin)
        .fetch_one(&self.pool)
        .await;
        match result {
            Ok(row) => Ok(row),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                let field = match db.constraint() {
                    Some("users_email_lower") => "email",
                    Some("users_phone") => "phone",
                    _ => "username",
                };
                Err(AuthError::AlreadyExists(field))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The user with this login name, if any.
    #[tracing::instrument(name = "users select", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "SELECT", db.collection.name = "users"))]
    pub async fn find_by_login(&self, login: &LoginName) -> Result<Option<UserRow>, AuthError> {
        let (sql, value): (&'static str, &str) = match login {
            LoginName::Username(u) => (
                "SELECT id, username, email, phone, password_hash, is_admin, disabled_at, created_at \
                 FROM users WHERE lower(username) = lower($1)",
                u.as_str(),
            ),
            LoginName::Email(e) => (
                "SELECT id, username, email, phone, password_hash, is_admin, disabled_at, created_at \
                 FROM users WHERE lower(email) = lower($1)",
                e.as_str(),
            ),
            LoginName::Phone(p) => (
                "SELECT id, username, email, phone, password_hash, is_admin, disabled_at, created_at \
                 FROM users WHERE phone = $1",
                p.as_str(),
            ),
        };
        Ok(sqlx::query_as::<_, UserRow>(sql).bind(value).fetch_optional(&self.pool).await?)
    }

    /// The user with this id, if any.
    #[tracing::instrument(name = "users select", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "SELECT", db.collection.name = "users"))]
    pub async fn get(&self, id: Uuid) -> Result<Option<UserRow>, AuthError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, phone, password_hash, is_admin, disabled_at, created_at \
             FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Replaces a user's password hash (rehash on login, password change).
    #[tracing::instrument(name = "users update", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "users"))]
    pub async fn set_password_hash(&self, id: Uuid, hash: &str) -> Result<(), AuthError> {
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a user disabled (keeps the first disable time); returns the row,
    /// or `None` if there is no such user. The last active admin cannot be
    /// disabled: [`AuthError::FailedPrecondition`].
    #[tracing::instrument(name = "users disable", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "users"))]
    pub async fn disable(&self, id: Uuid) -> Result<Option<UserRow>, AuthError> {
        let mut tx = self.pool.begin().await?;
        // Admin changes take turns, so two admins disabling each other at
        // the same moment cannot both succeed and leave no admin.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('taskgate.auth.admins'))").execute(&mut *tx).await?;
        let target = sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, phone, password_hash, is_admin, disabled_at, created_at \
             FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(target) = target else { return Ok(None) };
        if target.is_admin && target.disabled_at.is_none() {
            let others: i64 =
                sqlx::query_scalar("SELECT count(*) FROM users WHERE is_admin AND disabled_at IS NULL AND id <> $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if others == 0 {
                return Err(AuthError::FailedPrecondition("the last active admin cannot be disabled"));
            }
        }
        let row = sqlx::query_as::<_, UserRow>(
            "UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE id = $1 \
             RETURNING id, username, email, phone, password_hash, is_admin, disabled_at, created_at",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Clears a user's disabled mark; returns the row, or `None` if there is
    /// no such user.
    #[tracing::instrument(name = "users enable", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "users"))]
    pub async fn enable(&self, id: Uuid) -> Result<Option<UserRow>, AuthError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "UPDATE users SET disabled_at = NULL WHERE id = $1 \
             RETURNING id, username, email, phone, password_hash, is_admin, disabled_at, created_at",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Makes user `id` an admin.
    #[tracing::instrument(name = "users update", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation = "UPDATE", db.collection.name = "users"))]
    pub async fn make_admin(&self, id: Uuid) -> Result<(), AuthError> {
        sqlx::query("UPDATE users SET is_admin = true WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}
