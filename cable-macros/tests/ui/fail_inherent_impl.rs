#![allow(unused)]
use cable_core::{channel, ChannelResult, Context};

struct Chat;

#[channel]
impl Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
