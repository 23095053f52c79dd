//! `ordermesh db provision`: least privilege for the databases. One login role per service,
//! owning only its own database, with CONNECT revoked from everybody else — so the order
//! service's credentials cannot read payments, and a leaked password exposes one service's data.
//! Idempotent: re-running sets new passwords and leaves data alone. Run it before a service's
//! first start (tables created by another role stay that role's).

use std::str::FromStr;

use anyhow::Context;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use ordermesh::config::ServiceName;

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// A connection allowed to create roles and databases (a superuser, or CREATEROLE + CREATEDB).
    #[arg(
        long,
        env = "ORDERMESH_ADMIN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    admin_url: String,
    /// Namespace: databases and roles are `<namespace>_<service>`.
    #[arg(long, env = "ORDERMESH_NAMESPACE", default_value = "ordermesh")]
    namespace: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Create (or update) one role and one database per service; print each service's
    /// ORDERMESH_DATABASE__URL as `<service> <url>` lines (store them as the services' Secrets).
    Provision(ProvisionArgs),
}

pub async fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Provision(args) => provision(args).await,
    }
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.namespace.is_empty()
            && args.namespace.len() <= 40
            && args
                .namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "--namespace {:?}: use 1-40 lower-case letters, digits or '_'",
        args.namespace
    );
    let admin = PgConnectOptions::from_str(&args.admin_url)
        .context("--admin-url is not a PostgreSQL URL")?;
    let mut conn = PgConnection::connect_with(&admin.clone().database("postgres"))
        .await
        .with_context(|| {
            format!(
                "connecting to {} as the admin role",
                ordermesh::config::redact_url(&args.admin_url)
            )
        })?;
    for service in ServiceName::ALL {
        let name = format!("{}_{}", args.namespace, service);
        let password = uuid::Uuid::new_v4().simple().to_string();
        // DDL takes no bind parameters: let the server quote the identifiers and the password.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await?;
        let role_sql = if exists {
            "SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', $1, $2)"
        } else {
            "SELECT format('CREATE ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', $1, $2)"
        };
        execute_formatted(&mut conn, role_sql, &name, &password).await?;
        let db_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await?;
        let db_sql = if db_exists {
            "SELECT format('ALTER DATABASE %I OWNER TO %I', $1, $2)"
        } else {
            "SELECT format('CREATE DATABASE %I OWNER %I', $1, $2)"
        };
        execute_formatted(&mut conn, db_sql, &name, &name).await?;
        execute_formatted(
            &mut conn,
            "SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $1, $2)",
            &name,
            "",
        )
        .await?;
        let url = service_url(&admin, &name, &password);
        println!("{service} {url}");
    }
    Ok(())
}

/// Builds a statement with the server's `format()` (so %I / %L quote correctly) and runs it.
async fn execute_formatted(
    conn: &mut PgConnection,
    builder: &str,
    first: &str,
    second: &str,
) -> anyhow::Result<()> {
    let statement: String = sqlx::query_scalar(builder)
        .bind(first)
        .bind(second)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("building the statement for {first}"))?;
    sqlx::raw_sql(&statement)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("provisioning {first}"))?;
    Ok(())
}

/// The service's server URL: the admin URL's host and port with the service's own role.
fn service_url(admin: &PgConnectOptions, role: &str, password: &str) -> String {
    format!(
        "postgres://{role}:{password}@{}:{}",
        admin.get_host(),
        admin.get_port()
    )
}
