// AudioWorklet: the microphone's 128-sample blocks to the page, which makes 20 ms frames of them.
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor("ptt-capture", Capture);
