#![allow(unused)]
use cable_core::{channel, Channel, ChannelResult, Context};

struct Speak {
    body: String,
}

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self, ctx: &mut Context<'_>, data: Speak) -> ChannelResult {
        ctx.transmit(&data.body)
    }
}

fn main() {}
