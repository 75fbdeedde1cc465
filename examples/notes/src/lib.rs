//! The notes example: an axum app of the usual shape with live updates from
//! cable.
//!
//! - One SQLite database (sqlx), in the app state of both the HTTP side
//!   (`State<AppState>`) and the channels (`CableBuilder::state`).
//! - Login by the app's own session (tower-sessions, in memory): `POST
//!   /login` puts the name in the session; the connection hook reads that
//!   session from the request (`HttpExtensions`), so only logged-in pages
//!   connect, identified by their user, with the user as typed connection
//!   data.
//! - `NotesChannel` with typed actions: `add` (`{"body": …}`) writes a note
//!   and broadcasts it on `notes`.
//! - `POST /notes` (a form, for pages without JavaScript and for scripts)
//!   writes a note the same way, then broadcasts it: every open page shows
//!   it.
//!
//! `cargo run -p notes-example --bin notes`, then open http://127.0.0.1:3100
//! in two browsers.

use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use cable_core::{
    async_trait, authenticate_with, channel, Cable, CableBuilder, Channel, ChannelError,
    ChannelResult, Context, Identifiers, Unauthorized,
};
use cable_server::HttpExtensions;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer};

const PAGE: &str = include_str!("../assets/index.html");
/// The unmodified @rails/actioncable, vendored by the chat example.
const ACTIONCABLE_JS: &str = include_str!("../../chat/assets/vendor/actioncable.esm.js");

/// The stream every page follows.
pub const NOTES: &str = "notes";
/// The session key holding the logged-in name.
const USER: &str = "user";
/// The longest note, in characters.
pub const MAX_BODY: usize = 500;

/// A note as stored and as broadcast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// Its row id.
    pub id: i64,
    /// Who wrote it.
    pub author: String,
    /// What it says.
    pub body: String,
}

/// A row of `notes`: id, author, body.
type Row = (i64, String, String);

impl From<Row> for Note {
    fn from((id, author, body): Row) -> Self {
        Note { id, author, body }
    }
}

/// The logged-in user: the connection's typed data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    /// The name given at login.
    pub name: String,
}

/// Opens (and prepares) the database at `url` (`sqlite::memory:`, or
/// `sqlite://notes.db?mode=rwc`).
pub async fn open_database(url: &str) -> Result<SqlitePool, sqlx::Error> {
    // One connection: an in-memory database is per connection.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS notes (
           id INTEGER PRIMARY KEY AUTOINCREMENT,
           author TEXT NOT NULL,
           body TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// Writes a note; the one place both the channel and the handler write.
pub async fn add_note(db: &SqlitePool, author: &str, body: &str) -> Result<Note, String> {
    let body = body.trim();
    if body.is_empty() || body.chars().count() > MAX_BODY {
        return Err(format!("a note is 1 to {MAX_BODY} characters"));
    }
    sqlx::query_as::<_, Row>(
        "INSERT INTO notes (author, body) VALUES (?, ?) RETURNING id, author, body",
    )
    .bind(author)
    .bind(body)
    .fetch_one(db)
    .await
    .map(Note::from)
    .map_err(|e| format!("could not store the note: {e}"))
}

/// Every note, oldest first.
pub async fn all_notes(db: &SqlitePool) -> Result<Vec<Note>, sqlx::Error> {
    let rows = sqlx::query_as::<_, Row>("SELECT id, author, body FROM notes ORDER BY id")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Note::from).collect())
}

/// The data of the `add` action.
#[derive(Deserialize)]
pub struct AddNote {
    /// The note's text.
    pub body: String,
}

/// Streams `notes`; `add` writes a note as the connection's user and
/// broadcasts it.
#[derive(Default)]
pub struct NotesChannel;

#[channel]
#[async_trait]
impl Channel for NotesChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        ctx.stream_from(NOTES);
        Ok(())
    }

    #[action]
    async fn add(&mut self, ctx: &mut Context<'_>, data: AddNote) -> ChannelResult {
        let user = ctx
            .connection_data::<User>()
            .ok_or_else(|| ChannelError::other("no user on this connection"))?;
        let db = ctx
            .state::<SqlitePool>()
            .ok_or_else(|| ChannelError::other("no database in the app state"))?
            .clone();
        let note = add_note(&db, &user.name, &data.body)
            .await
            .map_err(ChannelError::InvalidData)?;
        ctx.broadcast(NOTES, &note).await
    }
}

/// The cable of this app: the channel, the database as app state, and the
/// hook that admits logged-in sessions only.
pub fn cable_builder(db: SqlitePool) -> CableBuilder {
    Cable::builder()
        .state(db)
        .channel("NotesChannel", NotesChannel::default)
        .authenticate(authenticate_with(|req| async move {
            let session = req
                .http_extension::<Session>()
                .ok_or_else(|| Unauthorized::because("no session layer on the request"))?;
            let name: Option<String> = session
                .get(USER)
                .await
                .map_err(|e| Unauthorized::because(format!("session: {e}")))?;
            let name = name.ok_or_else(|| Unauthorized::because("not logged in"))?;
            Ok(Identifiers::new()
                .with("current_user", name.clone())
                .with_data(User { name }))
        }))
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: SqlitePool,
    /// The cable, to broadcast after a write.
    pub cable: Cable,
}

async fn page(session: Session, State(app): State<AppState>) -> Response {
    let user: Option<String> = session.get(USER).await.ok().flatten();
    let notes = match all_notes(&app.db).await {
        Ok(n) => n,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let boot = serde_json::json!({ "user": user, "notes": notes });
    // `</` cannot end the script element from inside the JSON.
    let boot = boot.to_string().replace("</", "<\\/");
    Html(PAGE.replace("__BOOT__", &boot)).into_response()
}

#[derive(Deserialize)]
struct Login {
    name: String,
}

async fn login(session: Session, Form(form): Form<Login>) -> Response {
    let name = form.name.trim();
    if name.is_empty() || name.len() > 40 {
        return (StatusCode::BAD_REQUEST, "a name is 1 to 40 bytes").into_response();
    }
    match session.insert(USER, name).await {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn logout(session: Session) -> Redirect {
    let _ = session.flush().await;
    Redirect::to("/")
}

#[derive(Deserialize)]
struct NewNote {
    body: String,
}

/// Writes a note, then broadcasts it: the handler side of live updates.
async fn post_note(
    session: Session,
    State(app): State<AppState>,
    Form(f): Form<NewNote>,
) -> Response {
    let Ok(Some(user)) = session.get::<String>(USER).await else {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    };
    match add_note(&app.db, &user, &f.body).await {
        Ok(note) => {
            if let Err(e) = app.cable.broadcast(NOTES, &note).await {
                tracing::warn!(error = %e, "note {} stored but not broadcast", note.id);
            }
            Redirect::to("/").into_response()
        }
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn actioncable_js() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        ACTIONCABLE_JS,
    )
        .into_response()
}

/// The whole app: pages, login, the notes handler and cable's router, under
/// one session layer (so the connection hook sees the session).
pub fn app(db: SqlitePool, cable: Cable) -> Router {
    let sessions = SessionManagerLayer::new(MemoryStore::default())
        .with_secure(false)
        .with_expiry(tower_sessions::Expiry::OnInactivity(
            tower_sessions::cookie::time::Duration::hours(12),
        ));
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/notes", post(post_note))
        .route("/actioncable.esm.js", get(actioncable_js))
        .merge(cable_server::router(cable.clone(), Default::default()))
        .layer(sessions)
        .with_state(AppState { db, cable })
}

/// Serves the app on `addr` until SIGINT or SIGTERM, draining cable's
/// connections within 10 s.
pub async fn run(
    addr: std::net::SocketAddr,
    database: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let db = open_database(database).await?;
    let cable = cable_builder(db.clone()).build();
    let app = app(db, cable.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("notes listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            cable_server::shutdown_signal().await;
            cable_server::shutdown(&cable, Duration::from_secs(10)).await;
        })
        .await?;
    Ok(())
}
