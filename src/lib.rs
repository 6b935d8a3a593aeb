//! falgate: the server-side proxy every frontend puts in front of fal.ai.
pub mod emulator;
