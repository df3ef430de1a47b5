package org.mobilereid.demo

import android.content.Context
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.graphics.RectF
import android.util.AttributeSet
import android.view.MotionEvent
import android.view.View
import org.mobilereid.core.CropBox
import kotlin.math.abs

/**
 * The person box over the preview and the result text. The box is kept in normalised image coordinates (0..1 of
 * the upright analysis frame), so it maps to frame pixels whatever the view size; the preview is shown with
 * `fitCenter`, and [setFrameSize] tells the view where the frame lies inside it. Drag inside the box to move it,
 * drag near its bottom-right corner to resize it; until the user touches it, the box is the centred crop with the
 * model's aspect ratio.
 */
class CropOverlayView @JvmOverloads constructor(context: Context, attrs: AttributeSet? = null) : View(context, attrs) {
    private val boxPaint = Paint().apply { style = Paint.Style.STROKE; strokeWidth = 6f; color = Color.YELLOW; isAntiAlias = true }
    private val textPaint = Paint().apply { color = Color.WHITE; textSize = 44f; isAntiAlias = true; setShadowLayer(4f, 0f, 0f, Color.BLACK) }
    private var box = RectF(0.25f, 0.1f, 0.75f, 0.9f)
    private var frameW = 0
    private var frameH = 0
    private var touched = false
    private var lines: List<String> = emptyList()
    private var matched = false
    private var lastX = 0f
    private var lastY = 0f
    private var resizing = false

    /** Aspect ratio (height / width) of the model input, for the default box. */
    var modelAspect: Float = 2f

    fun setFrameSize(width: Int, height: Int) {
        if (width == frameW && height == frameH) return
        frameW = width
        frameH = height
        if (!touched) {
            val c = CropBox.centred(width, height, modelAspect)
            box = RectF(c.left / width.toFloat(), c.top / height.toFloat(), c.right / width.toFloat(), c.bottom / height.toFloat())
        }
        postInvalidate()
    }

    /** The box in frame pixels (what the core crops). */
    fun cropFor(width: Int, height: Int): CropBox = CropBox(
        (box.left * width).toInt(), (box.top * height).toInt(), (box.right * width).toInt(), (box.bottom * height).toInt(),
    ).clampTo(width, height)

    fun showResult(text: List<String>, isMatch: Boolean) {
        lines = text
        matched = isMatch
        postInvalidate()
    }

    private fun frameRect(): RectF {
        if (frameW == 0 || frameH == 0) return RectF(0f, 0f, width.toFloat(), height.toFloat())
        val s = minOf(width / frameW.toFloat(), height / frameH.toFloat())
        val w = frameW * s
        val h = frameH * s
        return RectF((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
    }

    override fun onDraw(canvas: Canvas) {
        super.onDraw(canvas)
        val f = frameRect()
        val r = RectF(f.left + box.left * f.width(), f.top + box.top * f.height(), f.left + box.right * f.width(), f.top + box.bottom * f.height())
        boxPaint.color = if (matched) Color.GREEN else Color.YELLOW
        canvas.drawRect(r, boxPaint)
        lines.forEachIndexed { i, line -> canvas.drawText(line, 24f, 60f + i * 52f, textPaint) }
    }

    override fun onTouchEvent(event: MotionEvent): Boolean {
        val f = frameRect()
        if (f.width() <= 0f || f.height() <= 0f) return false
        val nx = (event.x - f.left) / f.width()
        val ny = (event.y - f.top) / f.height()
        when (event.actionMasked) {
            MotionEvent.ACTION_DOWN -> {
                touched = true
                resizing = abs(nx - box.right) < 0.08f && abs(ny - box.bottom) < 0.08f
                lastX = nx
                lastY = ny
            }
            MotionEvent.ACTION_MOVE -> {
                val dx = nx - lastX
                val dy = ny - lastY
                if (resizing) {
                    box.right = (box.right + dx).coerceIn(box.left + 0.05f, 1f)
                    box.bottom = (box.bottom + dy).coerceIn(box.top + 0.05f, 1f)
                } else {
                    val mx = dx.coerceIn(-box.left, 1f - box.right)
                    val my = dy.coerceIn(-box.top, 1f - box.bottom)
                    box.offset(mx, my)
                }
                lastX = nx
                lastY = ny
                invalidate()
            }
            MotionEvent.ACTION_UP -> performClick()
        }
        return true
    }

    override fun performClick(): Boolean = super.performClick()
}
