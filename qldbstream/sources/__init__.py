"""Where Kinesis records come from: Lambda events, files, a live stream, saved QLDB API output."""
