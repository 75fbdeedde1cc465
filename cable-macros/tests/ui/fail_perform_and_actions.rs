#![allow(unused)]
use cable_core::{channel, Channel, ChannelResult, Context};

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>) -> ChannelResult {
        Ok(())
    }

    async fn perform(
        &mut self,
        _ctx: &mut Context<'_>,
        _action: &str,
        _data: serde_json::Value,
    ) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
