// The smallest typed channel: #[channel] adds #[async_trait] itself.
use cable_core::{channel, Channel, ChannelResult, Context};

#[derive(serde::Deserialize)]
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

fn main() {
    let _ = cable_core::Cable::builder().channel("Chat", || Chat);
}
