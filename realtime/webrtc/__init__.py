"""The WebRTC service (``realtime serve --webrtc``): an aiortc server, its tracks and its static page."""
