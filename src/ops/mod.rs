//! Tensor operations the model graph needs beyond candle's, with exact gradients.

pub mod pool;
