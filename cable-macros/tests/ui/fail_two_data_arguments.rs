#![allow(unused)]
use cable_core::{channel, Channel, ChannelResult, Context};

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self, _ctx: &mut Context<'_>, _body: String, _loud: bool) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
