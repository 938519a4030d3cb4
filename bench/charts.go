package bench

import (
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
)

// writeCharts draws the TPS-ratio and p99-latency charts (grouped bars:
// one group per workload, one bar per target) into dir and returns their
// paths. A pair that did not run ok has no bar. With no workload that has
// TPS and latency (idle-conns only) it draws nothing.
func writeCharts(dir string, a *aggregation, cfg Config) ([]string, error) {
	var names []string
	for _, w := range a.workloads {
		if !w.Kind.memory() { // no TPS or latency
			names = append(names, w.Name())
		}
	}
	if len(names) == 0 {
		return nil, nil // only memory workloads: nothing to chart
	}
	var ratioTargets []string
	for _, t := range a.targets {
		if t != TargetDirect {
			ratioTargets = append(ratioTargets, t)
		}
	}
	ratio := func(c *cell) float64 {
		if c == nil || c.ratioDirect.n == 0 {
			return 0
		}
		return c.ratioDirect.med
	}
	p99 := func(c *cell) float64 {
		if c == nil || c.p99.n == 0 {
			return 0
		}
		return c.p99.med
	}
	var out []string
	for _, ch := range []struct {
		file, title, ylabel string
		targets             []string
		value               func(*cell) float64
		unitLine            bool
	}{
		{ChartRatio, "TPS relative to direct (median over rounds; 1 = direct)", "TPS / direct TPS", ratioTargets, ratio, true},
		{ChartLat, "p99 latency (median over rounds)", "ms", a.targets, p99, false},
	} {
		p := plot.New()
		p.Title.Text = ch.title
		p.Y.Label.Text = ch.ylabel
		p.Y.Min = 0
		n := float64(len(ch.targets))
		width := vg.Points(math.Max(3, 60/n))
		top := 0.0
		for i, t := range ch.targets {
			vals := make(plotter.Values, len(names))
			for j, w := range names {
				vals[j] = ch.value(a.get(w, t))
				top = math.Max(top, vals[j])
			}
			bars, err := plotter.NewBarChart(vals, width)
			if err != nil {
				return out, err
			}
			bars.LineStyle.Width = 0
			bars.Color = plotutil.Color(i)
			bars.Offset = vg.Length(float64(i)-(n-1)/2) * width
			p.Add(bars)
			p.Legend.Add(t, bars)
		}
		if ch.unitLine {
			one := plotter.NewFunction(func(float64) float64 { return 1 })
			one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(one)
			top = math.Max(top, 1)
		}
		p.Y.Max = top * 1.15
		if p.Y.Max == 0 {
			p.Y.Max = 1
		}
		p.Legend.Top = true
		p.Legend.Left = false
		p.NominalX(names...)
		p.X.Tick.Label.Rotation = math.Pi / 4
		p.X.Tick.Label.XAlign = text.XRight
		p.X.Tick.Label.YAlign = text.YCenter
		p.Add(plotter.NewGrid())
		wInch := math.Max(8, float64(len(names))*n*0.18+2)
		path := filepath.Join(dir, ch.file)
		if err := p.Save(vg.Length(wInch)*vg.Inch, 6*vg.Inch, path); err != nil {
			return out, err
		}
		out = append(out, path)
	}
	return out, nil
}
