#![allow(unused)]
use cable_core::{action, ChannelResult, Context};

struct Chat;

impl Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
