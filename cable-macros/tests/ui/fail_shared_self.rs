#![allow(unused)]
use cable_core::{channel, Channel, ChannelResult, Context};

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
