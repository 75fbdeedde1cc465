#![allow(unused)]
use cable_core::{async_trait, channel, Channel, ChannelResult, Context};

struct Chat;

#[async_trait]
#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
