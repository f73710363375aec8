"""Quantized weights at serve time: their layout (`packed`) and the matmul that reads them
(`linear`)."""
