"""lorastudy."""
import warnings

# tqdm.auto's notice that ipywidgets is absent: the notebooks' progress bars fall back to text, which is fine
warnings.filterwarnings("ignore", message="IProgress not found")
