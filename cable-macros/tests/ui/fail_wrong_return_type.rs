#![allow(unused)]
use cable_core::{channel, Channel, Context};

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>) -> String {
        String::new()
    }
}

fn main() {}
