#![allow(unused)]
use cable_core::{channel, Channel, ChannelResult, Context};

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }

    #[action(name = "speak")]
    async fn talk(&mut self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
