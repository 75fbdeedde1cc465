//! `notes [--bind ADDR] [--database URL]`: the notes example (see the
//! library's docs). Defaults: 127.0.0.1:3100, an in-memory database.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut bind = "127.0.0.1:3100".to_owned();
    let mut database = "sqlite::memory:".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--bind", Some(v)) => bind = v,
            ("--database", Some(v)) => database = v,
            _ => {
                return Err(format!("usage: notes [--bind ADDR] [--database URL] ({arg}?)").into())
            }
        }
    }
    notes_example::run(bind.parse()?, &database).await
}
