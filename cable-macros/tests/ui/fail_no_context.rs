#![allow(unused)]
use cable_core::{channel, Channel, ChannelResult};

struct Chat;

#[channel]
impl Channel for Chat {
    #[action]
    async fn speak(&mut self) -> ChannelResult {
        Ok(())
    }
}

fn main() {}
