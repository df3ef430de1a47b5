package org.mobilereid.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Matrix
import androidx.camera.core.ImageProxy
import org.mobilereid.core.ArgbImage
import java.io.File

/**
 * Pixels for the core, always as ARGB_8888 ints in upright orientation. Camera frames come from CameraX
 * ImageAnalysis in RGBA_8888 (`ImageProxy.toBitmap()` converts them) and are rotated by the frame's
 * `rotationDegrees`, so the crop the user draws on the upright preview is the crop the model sees.
 */
object FrameConversion {
    fun upright(image: ImageProxy): ArgbImage {
        val bitmap = image.toBitmap()
        val rotation = image.imageInfo.rotationDegrees
        val upright = if (rotation == 0) bitmap else Bitmap.createBitmap(
            bitmap, 0, 0, bitmap.width, bitmap.height, Matrix().apply { postRotate(rotation.toFloat()) }, true,
        )
        return pixels(upright)
    }

    /** Decodes an image file (evaluation mode); fails with the file name when the decoder returns nothing. */
    fun decodeFile(file: File): ArgbImage {
        val options = BitmapFactory.Options().apply { inPreferredConfig = Bitmap.Config.ARGB_8888 }
        val bitmap = BitmapFactory.decodeFile(file.path, options) ?: throw IllegalArgumentException("$file: not a decodable image")
        return pixels(bitmap)
    }

    private fun pixels(bitmap: Bitmap): ArgbImage {
        val argb = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        val px = IntArray(argb.width * argb.height)
        argb.getPixels(px, 0, argb.width, 0, 0, argb.width, argb.height)
        return ArgbImage(argb.width, argb.height, px)
    }
}
