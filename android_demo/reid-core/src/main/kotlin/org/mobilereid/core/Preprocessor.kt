package org.mobilereid.core

/** A crop rectangle in source pixels, right/bottom exclusive (Android's `Rect` convention). */
data class CropBox(val left: Int, val top: Int, val right: Int, val bottom: Int) {
    val width: Int get() = right - left
    val height: Int get() = bottom - top

    /** The same box clamped to an image; fails if nothing of it is inside. */
    fun clampTo(imageWidth: Int, imageHeight: Int): CropBox {
        val c = CropBox(left.coerceIn(0, imageWidth), top.coerceIn(0, imageHeight), right.coerceIn(0, imageWidth), bottom.coerceIn(0, imageHeight))
        require(c.width > 0 && c.height > 0) { "crop $this lies outside the ${imageWidth}x$imageHeight image" }
        return c
    }

    companion object {
        /** The centred box with the model's aspect ratio that fills as much of the frame as fits (the default crop). */
        fun centred(imageWidth: Int, imageHeight: Int, aspectHeightOverWidth: Float): CropBox {
            var w = imageWidth
            var h = Math.round(w * aspectHeightOverWidth)
            if (h > imageHeight) {
                h = imageHeight
                w = Math.round(h / aspectHeightOverWidth)
            }
            val l = (imageWidth - w) / 2
            val t = (imageHeight - h) / 2
            return CropBox(l, t, l + w, t + h)
        }
    }
}

/** Model input ready for a runtime: float values, or quantized values when the artifact takes int8/uint8. */
class PreparedInput(val floats: FloatArray, val quantized: IntArray?, val spec: TensorSpec) {
    /** Quantized values as the bytes a runtime buffer takes (uint8 0..255 wraps into the signed byte, as in Java). */
    fun quantizedBytes(): ByteArray = ByteArray(quantized!!.size) { quantized[it].toByte() }
}

/**
 * Preprocessing of an ARGB_8888 pixel array (Android's `Bitmap.getPixels` order) into the artifact's input tensor,
 * step for step the same as `mobilereid/data/preprocess.py`, so results are bit-identical to the Python exporter
 * and evaluator (checked against golden vectors written by Python in the tests):
 *
 * 1. optional crop (plain slicing, like numpy `img[top:bottom, left:right]`);
 * 2. bilinear resize with half-pixel centres, edge clamping and no antialiasing, in float32, with the same operation
 *    order as numpy (`top = a*(1-wx) + b*wx`, then `top*(1-wy) + bottom*wy`); the JVM rounds every float operation
 *    and never fuses multiply-adds, like numpy's separate ufuncs;
 * 3. `((v * scale) - mean[c]) / std[c]` per channel in float32;
 * 4. NCHW or NHWC layout from the sidecar;
 * 5. for int8/uint8 inputs `clip(rint(x / scale) + zeroPoint)` (round half to even, like numpy and the runtimes).
 */
class Preprocessor(private val spec: PreprocessSpec, private val input: TensorSpec, private val layout: String) {
    constructor(meta: ArtifactMetadata) : this(meta.preprocess, meta.input, meta.layout)

    fun prepare(argb: IntArray, imageWidth: Int, imageHeight: Int, crop: CropBox? = null): PreparedInput {
        val floats = toFloatTensor(argb, imageWidth, imageHeight, crop)
        val q = input.quantization
        val quantized = when (input.dtype) {
            "int8" -> quantize(floats, q ?: error("int8 input without quantization parameters"), -128, 127)
            "uint8" -> quantize(floats, q ?: error("uint8 input without quantization parameters"), 0, 255)
            else -> null
        }
        return PreparedInput(floats, quantized, input)
    }

    /** Steps 1-4: the normalised float tensor in the artifact's layout. */
    fun toFloatTensor(argb: IntArray, imageWidth: Int, imageHeight: Int, crop: CropBox? = null): FloatArray {
        require(argb.size == imageWidth * imageHeight) { "pixel array holds ${argb.size} values, expected ${imageWidth}x$imageHeight" }
        val box = (crop ?: CropBox(0, 0, imageWidth, imageHeight)).clampTo(imageWidth, imageHeight)
        val resized = resizeBilinear(argb, imageWidth, box, spec.height, spec.width)
        return normaliseToLayout(resized)
    }

    private fun normaliseToLayout(hwc: FloatArray): FloatArray {
        val h = spec.height
        val w = spec.width
        val out = FloatArray(h * w * 3)
        val bgr = spec.colourOrder == "BGR"
        for (y in 0 until h) for (x in 0 until w) for (c in 0 until 3) {
            val src = hwc[(y * w + x) * 3 + (if (bgr) 2 - c else c)]
            val v = ((src * spec.scale) - spec.mean[c]) / spec.std[c]
            val idx = if (layout == "NHWC") (y * w + x) * 3 + c else c * h * w + y * w + x
            out[idx] = v
        }
        return out
    }

    companion object {
        /** Bilinear resize of the crop box of an ARGB image into float32 RGB, HxWx3 (values 0..255). */
        fun resizeBilinear(argb: IntArray, stride: Int, box: CropBox, dstH: Int, dstW: Int): FloatArray {
            val out = FloatArray(dstH * dstW * 3)
            fun px(y: Int, x: Int, c: Int): Float {
                val p = argb[(box.top + y) * stride + box.left + x]
                return ((p shr (16 - 8 * c)) and 0xFF).toFloat()
            }
            if (box.height == dstH && box.width == dstW) {
                for (y in 0 until dstH) for (x in 0 until dstW) for (c in 0 until 3) out[(y * dstW + x) * 3 + c] = px(y, x, c)
                return out
            }
            val ay = axis(dstH, box.height)
            val ax = axis(dstW, box.width)
            for (y in 0 until dstH) {
                val y0 = ay.lo[y]; val y1 = ay.hi[y]; val wy = ay.weight[y]
                for (x in 0 until dstW) {
                    val x0 = ax.lo[x]; val x1 = ax.hi[x]; val wx = ax.weight[x]
                    for (c in 0 until 3) {
                        val top = px(y0, x0, c) * (1f - wx) + px(y0, x1, c) * wx
                        val bottom = px(y1, x0, c) * (1f - wx) + px(y1, x1, c) * wx
                        out[(y * dstW + x) * 3 + c] = top * (1f - wy) + bottom * wy
                    }
                }
            }
            return out
        }

        private class Axis(val lo: IntArray, val hi: IntArray, val weight: FloatArray)

        /** Source positions for one axis: (i + 0.5) * (size / dst) - 0.5, clamped to [0, size - 1], in float32. */
        private fun axis(dst: Int, size: Int): Axis {
            val ratio = size.toFloat() / dst.toFloat()
            val lo = IntArray(dst)
            val hi = IntArray(dst)
            val wt = FloatArray(dst)
            for (i in 0 until dst) {
                val pos = ((i.toFloat() + 0.5f) * ratio - 0.5f).coerceIn(0f, (size - 1).toFloat())
                val l = Math.floor(pos.toDouble()).toInt()
                lo[i] = l
                hi[i] = minOf(l + 1, size - 1)
                wt[i] = pos - l.toFloat()
            }
            return Axis(lo, hi, wt)
        }

        /** clip(rint(x / scale) + zeroPoint, qmin, qmax): round half to even, as numpy, TFLite and ExecuTorch do. */
        fun quantize(x: FloatArray, q: Quantization, qmin: Int, qmax: Int): IntArray =
            IntArray(x.size) { i -> (Math.rint((x[i] / q.scale).toDouble()).toInt() + q.zeroPoint).coerceIn(qmin, qmax) }

        /** (q - zeroPoint) * scale in float32, for quantized model outputs. */
        fun dequantize(q: IntArray, p: Quantization): FloatArray = FloatArray(q.size) { i -> (q[i] - p.zeroPoint).toFloat() * p.scale }
    }
}
